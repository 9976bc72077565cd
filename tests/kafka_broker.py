"""The test broker lives in the package (``connectors.kafka.devbroker``) so `streamseq demo` can use it too."""
from connectors.kafka.devbroker import *  # noqa: F401,F403
from connectors.kafka.devbroker import TEST_CLIENT_SETTINGS, TansuBroker, free_port, start_tansu  # noqa: F401
