
from .checkpoint_compat import *  # noqa: F401,F403
from .vocabulary_hook import *  # noqa: F401,F403
from .progress_hook import *  # noqa: F401,F403
from .tag_resume_hook import *  # noqa: F401,F403
from .pseudo_label_resume_hook import *  # noqa: F401,F403
