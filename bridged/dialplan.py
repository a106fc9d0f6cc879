"""The contract between bridged and ``dialplan/bridged.conf``: every name both sides use, in one place.

The dialplan sends ``*77<order>`` (or ``*77`` and the code by DTMF) to bridged's FastAGI script
``order`` with the code in ``BRIDGED_CODE``; bridged answers in one channel variable, ``BRIDGED_REPLY``,
whose second field is always the language of the prompts (the config's ``language``), which the dialplan
sets as ``CHANNEL(language)`` first, so that every prompt the manager hears comes from ``sounds/<language>/``:

- ``ok|<language>|<Stasis() arguments>|<label>``: the dialplan sets the label (``BRIDGED_LABEL``) as the
  manager's connected line, installs the connected-line interception (``CONNECTED_LINE_SEND_SUB`` =
  ``bridged-label,s,1``), hands REFERs to bridged (``PJSIP_TRANSFER_HANDLING()=ari-only``) and enters
  ``Stasis(<app>,order,<call id>)``. The label is the last field, so a ``|`` in it cannot shift the others;
- ``refused|<language>|<prompt>``: a stock sound to play before hangup (a decision: final);
- ``unavailable|<language>|<prompt>``: this daemon cannot take calls now (no Asterisk, stopping);
- ``overloaded|<language>|<prompt>``: Asterisk is behind on this daemon's requests.

Several daemons: the dialplan tries the FastAGI targets ``BRIDGED_AGI`` (default
``agi://127.0.0.1:4573``), ``BRIDGED_AGI_2``, ``BRIDGED_AGI_3``, ... in order, moving on while the answer is
empty (the daemon is dead, or died mid-session), ``unavailable`` or ``overloaded``, and when ``Stasis()``
returns with the channel still up (the answering daemon's application was not registered, or it handed
the channel back). The FastAGI request's second argument (``BRIDGED_MORE``) is ``1`` when another target
follows: the daemon then only audits an ``unavailable``/``overloaded`` answer, the call row is written by
the daemon that takes the call. The last target's ``unavailable`` plays its prompt; ``overloaded`` rejects
a phone still ringing with 503 (cause 34), an answered one hears the prompt.

Channels bridged originates itself enter Stasis with ``customer,<call id>`` or ``manager,<call id>``. The
customer's leg is originated into ``[bridged-customer]`` (extension ``s``) with ``BRIDGED_LEG_APP`` (the
application) and ``BRIDGED_CALL`` (the call's id) set on it: once answered it enters
``Stasis(<BRIDGED_LEG_APP>,customer,<BRIDGED_CALL>)``, and again every half second for up to 20 s while that
fails (no daemon serves the application: killed, restarting, its lease not yet taken over) or a daemon
hands it back; then it is hung up.

A customer calling the shop's number reaches ``[bridged-inbound]`` (the carrier's context sends the
shop's DIDs there), which sends 180, hands REFERs to bridged and enters
``Stasis(<BRIDGED_APP, default bridged>,inbound,<CALLERID(pres)>)``: the caller's presentation, never
their number (the arguments end up in the CDR's ``lastdata``). Several daemons: when ``Stasis()`` returns with
the caller still there (the application is not registered, or an adopter handed the channel back), the
next application is tried (``BRIDGED_APP_2``, ``BRIDGED_APP_3``, ...); after the last, a prompt.

tests/unit/test_dialplan.py reads ``dialplan/bridged.conf`` and checks it against this module.
"""

from __future__ import annotations

import urllib.parse
from enum import StrEnum

# -- channel variables ------------------------------------------------------------------------------

# The order code dialled, URI-encoded (code_from_arg), or empty (bridged asks for it over FastAGI).
CODE = "BRIDGED_CODE"
REPLY = "BRIDGED_REPLY"  # bridged's FastAGI answer (see the module's docstring)
RESULT = "BRIDGED_RESULT"  # the dialplan's own: the answer's first field
LABEL = "BRIDGED_LABEL"  # the order label as a caller id string, read by the label subroutine
AGI_URL = "BRIDGED_AGI"  # optional, per endpoint or in [globals]: a daemon not on the default address
# Optional: the further daemons, tried in order after BRIDGED_AGI (BRIDGED_AGI_2, BRIDGED_AGI_3, ...).
AGI_URL_NEXT = "BRIDGED_AGI_"
TRY = "BRIDGED_TRY"  # the dialplan's own: which target it asks (1, 2, ...)
TARGET = "BRIDGED_TARGET"  # the dialplan's own: that target's URL (or application, inbound)
MORE = "BRIDGED_MORE"  # the dialplan's own, sent as the FastAGI's second argument: 1 if a target follows
# Optional, in [globals] or set_var= on the carrier endpoint: the Stasis application inbound calls go to
# (ari.app), when it is not DEFAULT_APP.
APP = "BRIDGED_APP"
# Optional: the further daemons' applications, tried in order after BRIDGED_APP (BRIDGED_APP_2, ...).
APP_NEXT = "BRIDGED_APP_"
# On the customer's leg bridged originates (customer_leg_variables): the application it enters once
# answered and the call it is the leg of.
LEG_APP = "BRIDGED_LEG_APP"
LEG_CALL = "BRIDGED_CALL"
# The version of dialplan/bridged.conf this daemon needs, the global that file sets (bridged.serving reads
# it when it connects to a node, and takes no call there until it matches). Raised with every change to
# the file that a daemon depends on.
VERSION_VARIABLE = "BRIDGED_DIALPLAN"
VERSION = "3"
VARIABLES = frozenset(
    {
        CODE,
        REPLY,
        RESULT,
        LABEL,
        AGI_URL,
        AGI_URL_NEXT,
        TRY,
        TARGET,
        MORE,
        APP,
        APP_NEXT,
        LEG_APP,
        LEG_CALL,
        VERSION_VARIABLE,
    }
)

# Where the carrier's calls to the shop's numbers go, and the application they enter without BRIDGED_APP.
INBOUND_CONTEXT = "bridged-inbound"
# Where the customer's leg goes once answered (extension CUSTOMER_EXTEN): into the application.
CUSTOMER_CONTEXT = "bridged-customer"
CUSTOMER_EXTEN = "s"
DEFAULT_APP = "bridged"

# The FastAGI script the dialplan runs: AGI(agi://host:port/order,${BRIDGED_CODE},${BRIDGED_MORE}).
AGI_SCRIPT = "order"


def code_from_arg(arg: str) -> str:
    """The code the manager dialled, from the FastAGI request's first argument.

    The dialplan URI-encodes it (``URIENCODE``): AGI() splits its arguments at commas and strips quotes and
    backslashes, so a raw ``*77<order>,1`` reached bridged as ``<order>`` with a forged second argument.
    Decoded whole and not trimmed: whatever is not exactly a code is refused as malformed; bytes that
    are not UTF-8 become U+FFFD, which no code pattern takes."""
    return urllib.parse.unquote(arg, errors="replace")


# -- the answer -------------------------------------------------------------------------------------

OK = "ok"
REFUSED = "refused"
UNAVAILABLE = "unavailable"
OVERLOADED = "overloaded"
REPLY_KINDS = frozenset({OK, REFUSED, UNAVAILABLE, OVERLOADED})
# The answers after which the dialplan asks the next daemon, if there is one.
PASS_ON = frozenset({UNAVAILABLE, OVERLOADED})
SEPARATOR = "|"


def reply_ok(language: str, stasis_args: str, label: str) -> str:
    return SEPARATOR.join((OK, language, stasis_args, label))


def reply_refused(language: str, prompt: str, *, kind: str = REFUSED) -> str:
    """A refusal: ``refused``, or ``unavailable``/``overloaded`` (the next daemon may take the call)."""
    assert kind in REPLY_KINDS - {OK}
    return SEPARATOR.join((kind, language, prompt))


# -- the language of the prompts --------------------------------------------------------------------

# Asterisk looks a sound up in sounds/<CHANNEL(language)>/ first. Set on every leg bridged handles: by the
# dialplan from the answer on a phone's channel, as an originate variable on the legs bridged dials
# (bridged.calls.legs.leg_variables).
CHANNEL_LANGUAGE = "CHANNEL(language)"


# -- the connected-line interception and transfers --------------------------------------------------

# Asterisk's variable naming the subroutine every connected-line update to the channel goes through.
SEND_SUB = "CONNECTED_LINE_SEND_SUB"
LABEL_CONTEXT = "bridged-label"
# The subroutine that puts the order label in place of any connected line sent to a manager's phone.
LABEL_SUB = f"{LABEL_CONTEXT},s,1"
# On both legs: a REFER becomes a ChannelTransfer event for bridged instead of a transfer Asterisk
# performs (which would take the customer out of the recorded bridge and out of bridged's hands).
TRANSFER_HANDLING = "PJSIP_TRANSFER_HANDLING()"
NO_TRANSFERS = {TRANSFER_HANDLING: "ari-only"}


# A channel bridged makes and then dials (the customer's leg) has no originate ``callerId``: its identity
# is set as variables. The INVITE's From and PAI are taken from its connected line (with only
# CALLERID(all) the carrier got From "Anonymous"); its caller id is what snapshots show. The connected
# line is set with "i" (no update sent for it): set plainly, Asterisk also re-INVITEd the carrier with it
# as the leg answered, which a carrier's own re-INVITE then met as glare (491).
CALLER_ID = "CALLERID(all)"
CONNECTED_LINE = "CONNECTEDLINE(all,i)"


def identity_variables(caller_id: str) -> dict[str, str]:
    """A made channel's outgoing identity (``"Shop" <+7495...>``): as an originate's ``callerId``."""
    return {CALLER_ID: caller_id, CONNECTED_LINE: caller_id}


def label_variables(label_caller_id: str) -> dict[str, str]:
    """What the dialplan sets on a phone's channel from an ``ok`` answer, for a manager leg bridged
    originates itself: the label and its interception (no transfers and the language: every leg's)."""
    return {LABEL: label_caller_id, SEND_SUB: LABEL_SUB}


def customer_leg_variables(app: str, call_id: str) -> dict[str, str]:
    """What [bridged-customer] reads on the customer's leg: which application it enters for which call."""
    return {LEG_APP: app, LEG_CALL: call_id}


# -- Stasis arguments -------------------------------------------------------------------------------


class Leg(StrEnum):
    """The first Stasis argument: which leg of which call a channel entering the application is."""

    ORDER = "order"  # a manager's phone that dialled *77 (the dialplan's Stasis())
    MANAGER = "manager"  # a manager leg bridged originates (HTTP path, inbound calls)
    CUSTOMER = "customer"  # the customer leg bridged originates
    # A customer calling the shop (bridged-inbound's Stasis()): the second argument is the caller's
    # presentation (CALLERID(pres)), not a call id; bridged makes the call.
    INBOUND = "inbound"


def app_args(leg: Leg, call_id: str) -> str:
    """The Stasis arguments after the application's name: ``<leg>,<call id>``."""
    return f"{leg.value},{call_id}"


def parse_app_args(args: list[str]) -> tuple[Leg, str] | None:
    """``(leg, call id)`` of a StasisStart's ``args`` (``(INBOUND, presentation)`` for an inbound call);
    None for anything else."""
    if len(args) < 2:
        return None
    try:
        return Leg(args[0]), str(args[1])
    except ValueError:
        return None
