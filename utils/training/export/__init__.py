"""Export formats, one module each, behind :func:`utils.training.export_utilities.export`.

Every format module has ``NAME``, ``FILE`` (the artifact's name in the export folder),
``KIND`` (how parity is judged: identical, exact, onnx or int8), ``REQUIRES`` (the optional
modules it imports), ``write(job) -> path``, ``runner(path, job)`` (the artifact loaded back
from disk in the runtime that serves it, as a callable over the graph's inputs) and
``example(names)`` (the model card's inference snippet). ``program`` is what they all trace,
``parity`` how they are compared with eager, ``card`` the model card, ``cli`` the command.
"""
