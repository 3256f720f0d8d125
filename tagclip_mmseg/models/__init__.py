# Pipeline order: clip, taggers, pseudo_labelers, segmentors/heads; ops is shared math.
from .clip import *  # noqa: F401,F403
from .heads import *  # noqa: F401,F403
from .pseudo_labelers import *  # noqa: F401,F403
from .segmentors import *  # noqa: F401,F403
from .taggers import *  # noqa: F401,F403
