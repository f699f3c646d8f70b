"""Someone else's code: how the suite loads it and calls it.

* :mod:`.factories` -- ``MODULE:FACTORY``: a user's subjects or implementations, imported from the current directory;
* :mod:`.callstate` -- a call of someone else's code in torch's clean global state, under a time limit.
"""
