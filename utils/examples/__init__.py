"""Example models shipped with the package, as gists export them (``model.py`` + ``config.json``).

``tiny_gpt`` is what ``python -m utils validate`` checks when no source is given.
"""
