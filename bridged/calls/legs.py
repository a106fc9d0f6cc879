"""What bridged does to the channels of its calls over ARI besides the calls' own steps: hangups that
must happen (retried while Asterisk does not answer), the ringback tone, prompts and announcements, the
label put on an inbound caller's channel and back on a customer leg, a declined transfer, a stray
channel turned away, the subscription to a customer's leg ringing from the dialplan; the variables every
leg bridged places carries (:func:`leg_variables`); and the legs it rings managers on, made in the
application and dialled (:class:`MadeLegs`)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping

from .. import dialplan
from ..ari import AriClient, background_requests
from ..ari.errors import AriBadRequest, AriConflict, AriError, AriNotFound, AriUnavailable
from ..config import Config, ConfigHolder, Manager
from ..tasks import Tasks
from .model import Call

log = logging.getLogger(__name__)

# A hangup Asterisk did not answer is retried after these delays (seconds), about 4 minutes in all.
HANGUP_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 60.0, 60.0)
# A subscription to a ringing customer leg Asterisk did not answer is sent again after these delays.
WATCH_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
# How long a stray channel hears the "unavailable" prompt before it is hung up.
STRAY_PROMPT_SECONDS = 3
# How long a leg made in the application may take to be there (its StasisStart): about a millisecond as
# a rule; past this, Asterisk or the event stream is in trouble and the leg is not rung.
MADE_WITHIN = 5.0


def media(sounds: str) -> list[str]:
    """A prompt's sounds (``a&b``, as the config writes them) as ARI media URIs."""
    return [f"sound:{name}" for name in sounds.split("&") if name]


def leg_variables(config: Config, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The channel variables of every leg bridged rings (:meth:`MadeLegs.make` adds them to each manager
    leg; bridged.calls.steps.Steps.originate_customer to the customer's):
    prompts and announcements in the shop's language (``CHANNEL(language)``, so that Asterisk plays
    ``sounds/<language>/...``), a REFER handed to bridged rather than performed by Asterisk; and ``extra``
    (the leg's identity, bridged.dialplan.identity_variables; a manager leg's label and its interception,
    bridged.dialplan.label_variables)."""
    return {dialplan.CHANNEL_LANGUAGE: config.language, **dialplan.NO_TRANSFERS, **(extra or {})}


def manager_leg_variables(label: str) -> dict[str, str]:
    """The own variables of a manager leg bridged rings (an HTTP call's, an inbound call's): the label
    (``"Order 123 Ivan P." <*77123>``) as the leg's identity, which the phone is shown as the caller (its
    number part redials the order), with the interception that keeps it the label."""
    return {**dialplan.identity_variables(label), **dialplan.label_variables(label)}


class Legs:
    def __init__(self, config: ConfigHolder, ari: AriClient, retries: Tasks) -> None:
        self.config = config
        self.ari = ari
        # Hangups being retried: cancelled at shutdown (the next start's reconcile hangs up strays).
        self._retries = retries
        self._seq = itertools.count(1)

    def playback_id(self, call: Call, what: str) -> str:
        return f"{call.id}-{what}-{next(self._seq)}"

    # -- hangups ----------------------------------------------------------------------------------

    async def hang_up_all(self, call: Call) -> None:
        """Both legs (and an inbound call's managers' phones still ringing), but for those Asterisk is
        hanging up already."""
        ringing = list(call.ring.legs) if call.ring is not None else []
        for channel_id in (call.manager_channel_id, call.customer_channel_id, *ringing):
            if channel_id and channel_id not in call.gone:
                await self.hang_up(channel_id, may_be_gone=True)

    async def hang_up(self, channel_id: str, *, may_be_gone: bool = False, reason: str = "normal") -> None:
        """Hang a channel up; failures are logged, never raised (at debug when it may be gone already).

        A hangup Asterisk did not answer (overloaded, restarting) is retried in the background: lost,
        it would leave a customer's line up with nobody on the other end. ``reason`` is ARI's (a phone
        rung for an inbound call someone else took: ``answered_elsewhere``, which its CANCEL says).
        """
        try:
            await self.ari.hangup(channel_id, reason)
        except AriUnavailable as exc:
            log.warning("hangup of %s failed: %s; retrying", channel_id, exc)
            self._retries.spawn(self.retry_hangup(channel_id), name=f"hangup-{channel_id}")
        except AriError as exc:
            log.log(
                logging.DEBUG if may_be_gone else logging.WARNING, "hangup of %s failed: %s", channel_id, exc
            )

    async def retry_hangup(self, channel_id: str) -> None:
        for attempt, delay in enumerate(HANGUP_RETRY_DELAYS, start=1):
            await asyncio.sleep(delay)
            try:
                with background_requests():  # not a sign that calls being set up wait
                    await self.ari.hangup(channel_id)
            except AriNotFound:
                return
            except AriUnavailable:
                continue
            except AriError as exc:
                log.warning("hangup of %s failed: %s", channel_id, exc)
                return
            log.info("hangup of %s done on retry %d", channel_id, attempt)
            return
        log.error(
            "hangup of %s failed %d more times; the stray sweep will try again",
            channel_id,
            len(HANGUP_RETRY_DELAYS),
        )

    async def refuse_stray(self, channel_id: str) -> None:
        """A channel that entered Stasis without a call it belongs to: a prompt, then hangup."""
        try:
            await self.ari.answer(channel_id)
            config = self.config.current
            # Not ours, so its language is whatever its endpoint said: the prompt names it.
            await self.ari.play(channel_id, media(config.prompts.unavailable), lang=config.language)
            await asyncio.sleep(STRAY_PROMPT_SECONDS)
        except AriError:
            pass
        await self.hang_up(channel_id)

    async def hand_back(self, channel_id: str) -> None:
        """A channel that entered an application this daemon only adopted (another daemon's, for the calls
        it had): back to the dialplan, which goes on after Stasis() to the next daemon."""
        try:
            await self.ari.continue_in_dialplan(channel_id)
        except AriError as exc:
            log.warning("handing %s back to the dialplan failed: %s; hanging it up", channel_id, exc)
            await self.hang_up(channel_id)

    # -- the customer's leg before its answer -----------------------------------------------------

    def watch(self, call: Call, channel_id: str, app: str) -> None:
        """Subscribe ``app`` to ``channel_id``, a customer's leg ringing from the dialplan (in no application
        until answered: bridged.calls.steps.Steps.originate_customer), in the background: its Dial and
        hangup events come to the call from then on. Events before the subscription are not seen (the
        first Dial, as a rule; the answer comes as the leg's StasisStart all the same)."""
        self._retries.spawn(self._subscribe(call, channel_id, app), name=f"watch-{channel_id}")

    async def _subscribe(self, call: Call, channel_id: str, app: str) -> None:
        for attempt, delay in enumerate((0.0, *WATCH_RETRY_DELAYS)):
            if delay:
                await asyncio.sleep(delay)
            try:
                with background_requests():  # not a sign that calls being set up wait
                    await self.ari.subscribe(app, [f"channel:{channel_id}"])
            except AriUnavailable:
                continue
            except AriError as exc:
                if isinstance(exc, AriBadRequest) and exc.status == 422:
                    # "Event source does not exist": the leg ended (busy, refused) before it was
                    # subscribed, its hangup unseen. Its cause is not known.
                    log.debug("call %s: leg %s gone before its subscription", call.id, channel_id)
                    call.queue.put_nowait({"type": "ChannelDestroyed", "channel": {"id": channel_id}})
                    return
                # 404 "Application does not exist" (its websocket is down): the reconnect's reconcile
                # looks at the leg and subscribes it again (bridged.calls.steps.Steps.recheck).
                log.info("call %s: subscribing to leg %s failed: %s", call.id, channel_id, exc)
                return
            if attempt:
                # Events may have been missed meanwhile: the leg as it is now.
                call.queue.put_nowait({"type": "Reconcile", "alive": None, "states": None})
            return
        log.warning("call %s: subscribing to leg %s failed %d times", call.id, channel_id, attempt + 1)

    # -- what the manager hears -------------------------------------------------------------------

    async def ringback(self, call: Call) -> None:
        """Let the manager hear that the customer is being called.

        The manager's phone already shows the order label: the FastAGI reply set its connected line
        (phone path), or the label is the identity of the leg bridged made to it (HTTP path)."""
        if not call.manager_up:
            # A phone that dialled the code has been sent 180 Ringing by the dialplan right before
            # Stasis() (dialplan/bridged.conf): no ARI request for it.
            return
        try:
            call.ringback_playback_id = self.playback_id(call, "ringback")
            await self.ari.play(
                call.manager_channel_id or "", "tone:ring", playback_id=call.ringback_playback_id
            )
        except AriError as exc:
            log.debug("call %s: ringback failed: %s", call.id, exc)

    async def stop_ringback(self, call: Call) -> None:
        if call.ringback_playback_id:
            playback_id, call.ringback_playback_id = call.ringback_playback_id, None
            try:
                await self.ari.stop_playback(playback_id)
            except AriError as exc:
                log.debug("call %s: stopping ringback failed: %s", call.id, exc)

    async def answer_manager(self, call: Call) -> None:
        if not call.manager_up:
            await self.ari.answer(call.manager_channel_id or "")
            call.manager_up = True

    async def prompt(self, call: Call, sounds: str) -> None:
        """Play ``sounds`` to the manager (answering the channel first); raises what ARI raises."""
        await self.answer_manager(call)
        call.prompt_playback_id = self.playback_id(call, "prompt")
        await self.ari.play(call.manager_channel_id or "", media(sounds), playback_id=call.prompt_playback_id)

    async def prompt_caller(self, call: Call, sounds: str) -> None:
        """Play ``sounds`` to an inbound caller (answering their channel first); raises what ARI raises."""
        caller = call.customer_channel_id or ""
        await self.ari.answer(caller)
        call.prompt_playback_id = self.playback_id(call, "prompt")
        # The caller's channel is the carrier's, not one bridged originated: the language goes with the play.
        await self.ari.play(
            caller, media(sounds), playback_id=call.prompt_playback_id, lang=self.config.current.language
        )

    async def announce(self, call: Call, sounds: str) -> None:
        """Play ``sounds`` (the recording announcement) to the customer."""
        call.announcement_playback_id = self.playback_id(call, "announce")
        await self.ari.play(
            call.customer_channel_id or "",
            media(sounds),
            playback_id=call.announcement_playback_id,
            # An inbound caller's channel is the carrier's: no CHANNEL(language) of ours on it.
            lang=self.config.current.language if call.inbound else None,
        )

    # -- what the legs carry ----------------------------------------------------------------------

    async def restore_customer_caller_id(self, call: Call) -> None:
        """The trunk put a carrier's identity (the customer's number) on the customer leg: the label goes
        back in, so that Asterisk does not write the number into the leg's CDR."""
        call.customer_caller_id_dirty = False
        # Debug: a trunk that sends the customer's identity (P-Asserted-Identity) does so on every call.
        log.debug("call %s: the trunk changed the customer leg's caller id; the label is put back", call.id)
        await self.label_customer_leg(call)

    async def label_customer_leg(self, call: Call) -> None:
        """The customer leg's caller id becomes the label; on an inbound caller's channel its ANI too
        (``CALLERID(all)`` leaves the ANI alone, and it holds the number the call came in with). The CDR
        then ends with the label (docs/asterisk.md, "Inbound calls")."""
        names = ("CALLERID(all)", "CALLERID(ani-all)") if call.inbound else ("CALLERID(all)",)
        await self._set_all(call, {name: call.label.caller_id for name in names}, "putting the label on")

    async def clear_redirecting(self, call: Call) -> None:
        """Empty an inbound caller's redirecting party (a forwarded call's Diversion or History-Info: the
        caller's number): nothing bridged originates takes it from this channel, and no copy stays.
        Option ``i``: set without sending a redirecting update, which the caller's channel would send the
        carrier as "181 Call Is Being Forwarded" (one per value, measured on the rig)."""
        empty = {"REDIRECTING(from-all,i)": "", "REDIRECTING(to-all,i)": "", "REDIRECTING(count,i)": "0"}
        await self._set_all(call, empty, "emptying the redirecting party of")

    async def _set_all(self, call: Call, values: dict[str, str], what: str) -> None:
        channel = call.customer_channel_id or ""
        results: list[object]
        if len(values) == 1:
            # An outbound customer leg's label: one request, awaited as it is (a gather makes a task of it).
            [(name, value)] = values.items()
            try:
                await self.ari.set_variable(channel, name, value)
                results = []
            except AriError as exc:
                results = [exc]
        else:
            results = await asyncio.gather(
                *(self.ari.set_variable(channel, name, value) for name, value in values.items()),
                return_exceptions=True,
            )
        for result in results:
            if isinstance(result, AriError):
                log.warning("call %s: %s the customer leg failed: %s", call.id, what, result)
            elif isinstance(result, BaseException):
                raise result

    async def decline_transfer(self, call: Call, channel_id: str, side: str) -> None:
        log.warning("call %s: the %s's phone asked for a transfer; declined", call.id, side)
        try:
            await self.ari.transfer_progress(channel_id, "channel_declined")
        except AriError as exc:
            log.warning("call %s: declining the transfer failed: %s", call.id, exc)


class MadeLegs:
    """The legs bridged rings managers on (an HTTP call's, an inbound call's): each a channel made in the
    application and dialled (:meth:`make`), not originated. An originated channel enters Stasis only once
    answered, and that entry fails while no daemon holds the application's websocket, so a manager
    answering while their daemon is dead (killed, restarting, its lease not yet taken over) was hung up at
    once. A made channel is in Stasis from the start and stays there, answered or not, for whoever serves
    the application next (docs/asterisk.md, "A customer or manager answering while the daemon is away").
    Its answer is a ``Dial`` event with dialstatus ANSWER; there is no second StasisStart. (The customer's
    leg is originated into the dialplan instead, which retries Stasis(): one request less before the
    carrier's INVITE; bridged.calls.steps.Steps.originate_customer.)

    Until their StasisStart the made channels are waited for here: ARI refuses to dial one before it is in
    the application (409 "Channel not in Stasis application"), which a made channel is only once that
    event is sent."""

    def __init__(self, ari: AriClient, legs: Legs) -> None:
        self.ari = ari
        self.legs = legs
        self._waiting: dict[str, asyncio.Future[None]] = {}

    async def make(
        self, channel_id: str, call: Call, manager: Manager, *, app: str, ring_timeout: int
    ) -> None:
        """Ring ``manager``'s phone for up to ``ring_timeout`` seconds on a channel ``channel_id`` made in
        application ``app`` as a manager leg of ``call`` (its Stasis arguments), with every leg's variables
        (:func:`leg_variables`) and a manager leg's own (:func:`manager_leg_variables`: the call's label
        as its identity, ``create`` having no ``callerId``). Raises what ARI raised; a channel that may
        have been made but was not dialled is hung up first (it would sit in Stasis, ringing nobody): not
        one whose create Asterisk refused (500 "Allocation failed": the phone is not registered on that
        node)."""
        made = self.ari.create_channel(
            endpoint=f"PJSIP/{manager.endpoint}",
            app=app,
            app_args=dialplan.app_args(dialplan.Leg.MANAGER, call.id),
            channel_id=channel_id,
            variables=leg_variables(self.legs.config.current, manager_leg_variables(call.label.caller_id)),
        )
        try:
            await self.make_and_dial(
                channel_id,
                made,
                lambda: self.ari.dial(channel_id, timeout=ring_timeout),
                within=MADE_WITHIN,
            )
        except AriError as exc:
            refused = exc.operation == "create_channel" and exc.status and not isinstance(exc, AriUnavailable)
            if not refused:
                await self.legs.hang_up(channel_id, may_be_gone=True)
            raise

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def entered(self, channel_id: str) -> None:
        """A channel's StasisStart was seen (any channel's: most are none of these)."""
        entered = self._waiting.pop(channel_id, None)
        if entered is not None and not entered.done():
            entered.set_result(None)

    async def make_and_dial(
        self,
        channel_id: str,
        make: Awaitable[object],
        dial: Callable[[], Awaitable[None]],
        *,
        within: float,
    ) -> None:
        """Make a channel in the application (``make``: the ``create_channel`` request naming
        ``channel_id``), then ``dial`` it. ARI refuses the dial (409) until the channel is in the
        application, its StasisStart sent, which as a rule comes before the create's answer: the dial is
        sent at once, and on a 409 sent again once the StasisStart is seen (no wait on the setup's path
        for the usual call). AriUnavailable if it is not seen ``within`` seconds (the leg is then left to
        the caller to hang up)."""
        entered = self._waiting[channel_id] = asyncio.get_running_loop().create_future()
        try:
            await make
            if not entered.done():
                try:
                    await dial()
                    return
                except AriConflict:
                    log.debug(
                        "channel %s dialled before it was in the application; dialled again", channel_id
                    )
                await asyncio.wait_for(entered, within)
            await dial()
        except TimeoutError:
            raise AriUnavailable(
                "create_channel", 0, f"channel {channel_id} not in the application after {within:.0f} s"
            ) from None
        finally:
            self._waiting.pop(channel_id, None)
