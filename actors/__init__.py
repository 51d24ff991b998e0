"""The node's actors (pykka), one per file, and the supervisor that starts and stops them.

Actors talk by telling each other the immutable messages of `actors.messages`; `ask` is
used only from the edges (API, CLI, tests), always with a timeout.
"""
