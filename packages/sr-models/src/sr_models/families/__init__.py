"""Model families. Importing this package registers every family's names."""

from sr_models.families import esc  # noqa: F401, I001
from sr_models.families import sst  # noqa: F401
from sr_models.families import iet  # noqa: F401
from sr_models.families import sscan  # noqa: F401
from sr_models.families import lte  # noqa: F401
