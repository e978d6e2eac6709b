"""CDSR's ablations as data: each registered variant is CDSR with some of its switches changed.

``CDSR(..., pixel_branch, patch_branch, codebook, fusion, encoder)`` takes the switches; the
registry (``model/__init__.py``) builds ``cdsr-<ablation>`` as CDSR with ``ABLATIONS[ablation]``
set, and CDSR names itself after its switches (``variant_name``), so ``model.name`` and every
checkpoint record the variant. To study another combination, add a line to ``ABLATIONS``.
"""
from dataclasses import dataclass, field

BASE = "cdsr"

# The paper's CDSR. fusion: 'dqa' (domain query attention) or 'da' (DA conv, no attention);
# encoder: 'lpe' (pixel + patch branches, optional CSC codebook) or 'dasr' (DASR's six convs).
PAPER_SWITCHES: dict[str, object] = dict(pixel_branch=True, patch_branch=True, codebook=True,
                                         fusion="dqa", encoder="lpe")


@dataclass(frozen=True)
class Ablation:
    """``switches``: the CDSR switches that differ from the paper's; ``removes``: what the
    variant takes away, in one line (the README table and ``--help`` show it)."""
    switches: dict = field(default_factory=dict)
    removes: str = ""


ABLATIONS: dict[str, Ablation] = {
    "no-patch": Ablation(dict(patch_branch=False),
                         "LPE's patch-wise branch: the embedding comes from the pixel-wise branch only"),
    "no-pixel": Ablation(dict(pixel_branch=False),
                         "LPE's pixel-wise branch: the embedding comes from the patch-wise branch only"),
    "no-csc": Ablation(dict(codebook=False),
                       "the CSC codebook: the fused LPE feature is the embedding"),
    "no-dqa": Ablation(dict(fusion="da"),
                       "DQA's attention with the image statistics: the degradation vector predicts "
                       "the dynamic kernels directly (DASR's DA conv, channel gate reduction 2)"),
    "dasr-encoder": Ablation(dict(encoder="dasr", codebook=False),
                             "LPE and CSC: DASR's six-conv encoder feeds CDSR's generator"),
}


def variant_names() -> list[str]:
    """'cdsr-<ablation>' for every ablation, sorted."""
    return sorted(f"{BASE}-{name}" for name in ABLATIONS)


def variant_switches(name: str) -> dict[str, object]:
    """The full switch set of 'cdsr' or 'cdsr-<ablation>' (KeyError for other names)."""
    if name == BASE:
        return dict(PAPER_SWITCHES)
    prefix = f"{BASE}-"
    if not name.startswith(prefix) or name[len(prefix):] not in ABLATIONS:
        raise KeyError(name)
    return {**PAPER_SWITCHES, **ABLATIONS[name[len(prefix):]].switches}


def variant_name(switches: dict[str, object]) -> str:
    """The registry name of a full switch set: 'cdsr' for the paper's, 'cdsr-<ablation>' for a
    registered ablation; ValueError for any other combination (so every model that can be built
    can be rebuilt from its checkpoint)."""
    for name in [BASE] + variant_names():
        if variant_switches(name) == switches:
            return name
    changed = {k: v for k, v in switches.items() if PAPER_SWITCHES.get(k) != v}
    raise ValueError(f"CDSR switches {changed} are not a registered variant; registered: "
                     + ", ".join(f"{name} {ABLATIONS[name[len(BASE) + 1:]].switches}"
                                 for name in variant_names())
                     + " (add a line to model/variants.py ABLATIONS to study another)")


def family(name: str) -> str:
    """'cdsr' for CDSR and its variants, otherwise ``name``'s canonical spelling (which preset
    applies: 'blindsr' trains with DASR's)."""
    from . import canonical_name        # here: the registry imports this module
    try:
        name = canonical_name(name)
    except ValueError:                  # unknown: no preset; building the model names the error
        return str(name).lower()
    try:
        variant_switches(name)
        return BASE
    except KeyError:
        return name
