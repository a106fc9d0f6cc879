"""Masked calls driven through ARI: an explicit state machine per call.

- model.py: the states, the transitions between them, the events a call reacts to, the call itself;
- engine.py: the live calls, events routed to each call's worker, and the reaction table (what each
  state does with each event);
- steps.py: the reactions themselves (ring, bridge, refuse, end);
- legs.py: hangups, ringback, prompts and the like on the calls' channels;
- recording.py: a call's recording, from its start to the judgement of what it holds;
- rows.py: every write to a call's row once it is under way, retried while the database is away;
- reconcile.py: adoption after a reconnect or a restart, and the sweep of stray channels.
"""
