"""The licence of published Clay weights, as the Hub's model-card spec writes it, and the card text that states it.

Converted Clay v0 weights, and weights trained from them at any remove, keep the OpenRAIL-M licence of the v0 release
(`license: openrail`); weights that descend from random initialisation alone (a user's own from-scratch model, and
models trained only from such weights) take the licence the publisher chooses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CARD_DIR = Path(__file__).parent / "templates"  # package data: the card templates and the licence ship with the wheel
LICENSE_FILE = "LICENSE.md"
OPENRAIL = "openrail"  # the Hub's licence id of the OpenRAIL family: the licence of the Clay v0 weights, OpenRAIL-M
OWN_WEIGHTS_LICENSE = "apache-2.0"  # the code's licence: the default for weights a user trained from scratch


@dataclass(frozen=True)
class WeightsLicense:
    """The weights' licence as the Hub's model-card spec writes it: a Hub licence id (`license: openrail`,
    `license: apache-2.0`), or `license: other` with `license_name` and `license_link`."""

    license: str = OPENRAIL
    name: str | None = None
    link: str | None = None

    @property
    def openrail(self) -> bool:
        return self.license == OPENRAIL

    @property
    def title(self) -> str:
        return "OpenRAIL-M" if self.openrail else f"`{self.name or self.license}`"

    def metadata(self) -> dict[str, str]:
        """The card's licence fields: name and link only with `license: other`."""
        if self.license == "other":
            return {"license": "other", "license_name": self.name or "", "license_link": self.link or ""}
        return {"license": self.license}


OPENRAIL_M = WeightsLicense()  # the licence of the Clay v0 weights and of what is trained from them


def license_problems(license: str | None, name: str | None, link: str | None) -> list[str]:
    """What the Hub's model-card spec refuses in these licence fields (empty: valid)."""
    if not license:
        return ["license is missing"]
    if license == "other":
        return [] if name and link else ["license: other needs license_name and license_link"]
    if name or link:
        return ["license_name and license_link go with license: other only"]
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", license):
        return [f"license {license!r} is not a Hub licence id (e.g. apache-2.0, mit, openrail, other)"]
    return []


def license_section(license: WeightsLicense) -> str:
    """The card's closing licence paragraph."""
    if license.openrail:
        return (
            f"The weights are released under the OpenRAIL-M licence ([LICENSE]({LICENSE_FILE})), the licence of the "
            "Clay v0 weights; its use restrictions, summarised above, pass on to every derivative. The modelling "
            "code in this repository is Apache-2.0."
        )
    return (
        f"The weights descend from random initialisation alone, with no Clay v0 weights in them, and their publisher "
        f"released them under {license.title} ([LICENSE]({LICENSE_FILE})). The modelling code in this repository "
        "is Apache-2.0."
    )


def license_file_text(license: WeightsLicense) -> str:
    """LICENSE.md of the repository: the package's OpenRAIL-M file, or a note on the publisher's licence."""
    if license.openrail:
        return (CARD_DIR / "LICENSE.md").read_text()
    where = f": {license.link}" if license.link else " (the Hub licence of that id)"
    return (
        f"# Licences of this repository\n\n## Model weights: {license.title}\n\nThe model weights descend from "
        f"random initialisation alone, trained with clay_hf (no Clay v0 weights), and are licensed by their "
        f"publisher under {license.title}{where}.\n\n## Code: Apache-2.0\n\nThe modelling code in this repository is "
        "part of `clay_hf` and licensed under the Apache License, Version 2.0: "
        "https://www.apache.org/licenses/LICENSE-2.0\n"
    )


def prohibited_uses(license: WeightsLicense) -> str:
    """OpenRAIL-M's use restrictions, summarised once for every card (package data); other licences set none."""
    if license.openrail:
        return (CARD_DIR / "prohibited_uses.md").read_text().strip()
    return (
        f"None beyond the terms of the weights' licence, {license.title}: descended from random initialisation, they "
        "hold no Clay v0 weights, so OpenRAIL-M's use restrictions do not apply. Use them lawfully and with care."
    )


def license_row(license: WeightsLicense) -> str:
    return f"weights: {license.title} ([LICENSE]({LICENSE_FILE})); code: Apache-2.0"


__all__ = [
    "CARD_DIR",
    "LICENSE_FILE",
    "OPENRAIL",
    "OPENRAIL_M",
    "OWN_WEIGHTS_LICENSE",
    "WeightsLicense",
    "license_file_text",
    "license_problems",
    "license_row",
    "license_section",
    "prohibited_uses",
]
