"""The shared error vocabulary: everything the wire layer can refuse."""


class FedavgError(Exception):
    """Base of every error fedavg raises on purpose."""


class ProtocolError(FedavgError):
    """A WebSocket frame that is not valid JSON, has an unknown type or bad fields."""


class SpecError(FedavgError):
    """A model spec that is malformed or out of the allowed bounds."""


class WeightsError(FedavgError):
    """A weights file that is not valid safetensors or does not fit the model."""


class DataError(FedavgError):
    """Local data (an image folder, a .safetensors or .npz file) that cannot be read as a
    labelled set, or breaks a limit; the message names the file or field."""
