"""Exceptions with messages that name the offending file, user, id or shape."""


class RGDError(Exception):
    """Base class of rgd-engine errors meant for users (bad input, missing model, ...)."""


class ModelLoadError(RGDError):
    pass


class TokenizerMismatchError(RGDError):
    pass


class HeadBankError(RGDError):
    pass


class UnknownUserError(HeadBankError, KeyError):
    def __str__(self):  # KeyError would quote the message
        return self.args[0] if self.args else ""
