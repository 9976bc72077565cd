"""The test broker: the same local Tansu launcher `streamseq demo` uses (``streamseq.localbroker``)."""
from streamseq.localbroker import LOCAL_CLIENT_SETTINGS, TansuBroker, free_port, start_tansu  # noqa: F401
