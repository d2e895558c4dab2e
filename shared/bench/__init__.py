"""``greenroom bench``: a tool that measures greenroom against bare Dramatiq, not part of production.

Its task lives here, on its own queue, and is known only to the processes the bench starts.
"""
