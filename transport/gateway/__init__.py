"""The gateway service (architecture 2 of DESIGN.md): jobs from the cloud over MQTT,
update sessions to the devices on its serial and LoRa links, a SQLite job store.

- :mod:`.config`: the TOML configuration; :mod:`.topics`: the topic scheme;
- :mod:`.mqtt`: aiomqtt behind otaferry's errors (the only module that imports it);
- :mod:`.store`: the job store; :mod:`.artifacts`: the verified artifact cache;
- :mod:`.service`: :class:`Gateway`; :mod:`.client`: :class:`JobClient`, the submitter's side;
- :mod:`.broker`: :class:`Broker`, a small MQTT 3.1.1 broker (the demo's embedded default),
  on :mod:`.mqttwire`, its packet codec.
"""

from .broker import Broker, BrokerLimits
from .client import JobClient
from .config import ConfigError, GatewayConfig, RetryPolicy, load_config
from .service import Gateway, Log, aws_state
from .store import JobStore
from .topics import Topics

__all__ = [
    "Broker",
    "BrokerLimits",
    "ConfigError",
    "Gateway",
    "GatewayConfig",
    "JobClient",
    "JobStore",
    "Log",
    "RetryPolicy",
    "Topics",
    "aws_state",
    "load_config",
]
