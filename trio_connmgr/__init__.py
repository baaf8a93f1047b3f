"""trio_connmgr: a connection manager for Trio (the libp2p "connection manager v2" design).

Protocols enrol, ask for a quota of the node's connections, score their own
streams, lock what they cannot lose and mark bursty work; a supervised regulator
prunes connections by cancelling their scopes. Start with
:func:`open_connection_manager`.
"""

from ._config import Direction as Direction
from ._config import Grant as Grant
from ._config import Limits as Limits
from ._config import Quota as Quota
from ._core._events import AdmissionRefused as AdmissionRefused
from ._core._events import BurstClosed as BurstClosed
from ._core._events import BurstOpened as BurstOpened
from ._core._events import ConnectionClosed as ConnectionClosed
from ._core._events import ConnectionOpened as ConnectionOpened
from ._core._events import ConnectionPruned as ConnectionPruned
from ._core._events import Event as Event
from ._core._events import GrantChanged as GrantChanged
from ._core._events import LimitsChanged as LimitsChanged
from ._core._events import LockDeniedEvent as LockDeniedEvent
from ._core._events import LockExpired as LockExpired
from ._core._events import LockExtended as LockExtended
from ._core._events import LockGranted as LockGranted
from ._core._events import LockReleased as LockReleased
from ._core._events import LockRevoked as LockRevoked
from ._core._events import RoundCompleted as RoundCompleted
from ._core._planner import Phase as Phase
from ._core._planner import PruneReason as PruneReason
from ._core._scoring import RecencyScorer as RecencyScorer
from ._core._state import Connection as Connection
from ._core._state import Scorer as Scorer
from ._core._state import Stream as Stream
from ._core._stats import ProtocolStatistics as ProtocolStatistics
from ._core._stats import RoundStatistics as RoundStatistics
from ._core._stats import Statistics as Statistics
from ._enrollment import Burst as Burst
from ._enrollment import Enrollment as Enrollment
from ._enrollment import Lock as Lock
from ._errors import ConfigError as ConfigError
from ._errors import ConnectionRefused as ConnectionRefused
from ._errors import ConnMgrError as ConnMgrError
from ._errors import LockDenied as LockDenied
from ._errors import ManagerClosed as ManagerClosed
from ._errors import QuotaDenied as QuotaDenied
from ._errors import ResourceClosed as ResourceClosed
from ._events import EventReceiver as EventReceiver
from ._events import replay_trace as replay_trace
from ._manager import ConnectionManager as ConnectionManager
from ._manager import Explanation as Explanation
from ._manager import open_connection_manager as open_connection_manager
from .admission import Admission as Admission
from .sensing import Sensing as Sensing

__version__ = "0.1.0.dev0"
