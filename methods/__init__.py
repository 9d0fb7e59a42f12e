"""Methods outside the core, installed as ``snap3d.methods``.

``nerfstudio_plugin``: the ``ns-train`` methods snap3d-splat, snap3d-lpgs and
snap3d-lightslab (needs ``snap3d[nerfstudio]``). This package itself imports nothing, so
``import snap3d.methods`` works without nerfstudio.
"""
