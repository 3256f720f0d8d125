
from .checkpoint_compat import *  # noqa: F401,F403
from .progress_hook import *  # noqa: F401,F403
from .vocabulary_hook import *  # noqa: F401,F403
from .writer_run_hook import *  # noqa: F401,F403
