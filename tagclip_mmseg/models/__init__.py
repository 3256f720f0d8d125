from .clip import *  # noqa: F401,F403
from .heads import *  # noqa: F401,F403
from .segmentors import *  # noqa: F401,F403
from .prompts import *  # noqa: F401,F403
from .text_classifier import *  # noqa: F401,F403
from .data_preprocessor import *  # noqa: F401,F403
from .taggers import *  # noqa: F401,F403
from .labelers import *  # noqa: F401,F403
