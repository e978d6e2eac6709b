"""Model names as users spell them: the registry's names are lower case ('cdsr', 'dasr',
'cdsr-no-patch', ...); ``canonical_name`` also takes any case and the authors' own names for
the same networks (DASR's code calls its model 'blindsr', so its ``--model='blindsr'`` commands
run unchanged)."""

ALIASES = {"blindsr": "dasr"}      # the authors' name -> ours


def canonical_name(name: str) -> str:
    """The registry's spelling of ``name`` (case-insensitive; aliases resolved). Unknown names
    come back lower-cased: the registry says which names exist."""
    key = str(name).strip().lower()
    return ALIASES.get(key, key)
