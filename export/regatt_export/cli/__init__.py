"""The ``regatt`` commands that need PyTorch (``export``, ``train``, ``whiten``).

They are registered into the runtime's CLI through the ``regatt.commands`` entry-point group
(see ``pyproject.toml``), so the runtime package never imports this one. Each module keeps its
torch imports inside the command function.
"""
