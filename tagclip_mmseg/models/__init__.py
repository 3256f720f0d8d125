# The pipeline, in order: the frozen CLIP and its vocabulary (clip), the
# tagger (taggers), the pseudo-labeler (pseudo_labelers), and the segmentors
# and heads trained on its masks; ops holds the batched math they share.
from .clip import *  # noqa: F401,F403
from .heads import *  # noqa: F401,F403
from .pseudo_labelers import *  # noqa: F401,F403
from .segmentors import *  # noqa: F401,F403
from .taggers import *  # noqa: F401,F403
