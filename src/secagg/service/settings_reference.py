"""Write docs/SETTINGS.md, the settings reference, from the knobs' declarations.

``python -m secagg.service.settings_reference docs/SETTINGS.md`` rewrites it;
``tests/service/test_settings_reference.py`` fails while the committed file differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from secagg.dp.settings import DpSettings
from secagg.knobs import reference
from secagg.schemes.ckks import CkksSettings
from secagg.schemes.masking.parameters import Params
from secagg.service.settings import CoordinatorSettings
from secagg.service.tasks import TaskSpec

__all__ = ["settings_reference"]


def settings_reference() -> str:
    """The reference, section by section, as a deployment file orders them."""
    return reference(
        {
            '[round] with scheme = "masking" (the default): SecAgg and SecAgg+': Params,
            '[round] and [ckks] with scheme = "ckks"': CkksSettings,
            "[coordinator]: how the coordinator listens and paces rounds": CoordinatorSettings,
            "[dp]: distributed differential privacy (masking only)": DpSettings,
            "[task]: what `secagg join` trains by default": TaskSpec,
        }
    )


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(settings_reference())
