"""bridged: masked calls from a shop's managers to the customers of orders, on Asterisk 22 (ARI, FastAGI).

The customer's phone number never reaches a manager. Run it with ``bridged run --config FILE`` (see
``bridged/__main__.py``); the pieces are described in the README's repository layout.
"""
