"""One exception type for every problem the user can fix.

Scripts catch `UserError` at the top and print its message (which names the file or row
and the fix) without a traceback; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, with a message that says the fix."""
