"""The one exception type that means "the user asked for something we cannot do"."""


class InputError(ValueError):
    """Bad user input: a missing or corrupt file, an absurd setting, an existing output folder.

    The message is one line that says what was wrong and what is allowed. The command line turns
    it into exit status 2; the studio shows it in the page. Everything else is an internal error.
    """


class Cancelled(RuntimeError):
    """Raised inside a long call (sampling, training, a fit) when its ``should_cancel`` says so.

    Nothing half-done is written: the caller's temporary run folder is removed.
    """
