"""Exception types for user mistakes; each message says what went wrong and what to do."""


class AttnsegError(Exception):
    """Base class for every error attnseg raises on bad input; the CLI prints it without a traceback."""


class BadImageError(AttnsegError):
    """An input image is missing, unreadable, or outside the accepted size."""


class BadClassesError(AttnsegError):
    """The class list is empty, has duplicates or blanks, or a name has no content tokens."""


class BadCheckpointError(AttnsegError):
    """A model folder or checkpoint file is missing, partial, corrupt, pickled, or of an unknown family."""


class BadDatasetError(AttnsegError):
    """A data set folder does not match the layout its reader expects."""


class BadConfigError(AttnsegError):
    """A method or CLI setting is out of range or names an unknown option."""


class BadOutputError(AttnsegError):
    """An output path is a file, cannot be written, or holds files attnseg did not write."""


class UnknownWordError(BadClassesError):
    """A class name uses a word the model's tokenizer cannot represent."""


class BadPromptError(AttnsegError):
    """A generation prompt is empty or uses words the model's tokenizer does not know."""
