"""The ``testbench`` command line, in one place: :mod:`utils.__main__` holds the ``COMMANDS``
map and the training commands; :mod:`.common` what every command shares (exit codes, the
source options, the flags built from ``TrainingConfig``); :mod:`.export` and :mod:`.push` the
export and Hub commands. Nothing here is imported by ``import utils``.
"""
