"""iPhone viewer bundles (``snap3d export RUN --format ios``) and their reference renderer.

- `snap3d.mobile.bundle`: ``export_bundle``, ``validate``; the bundle format.
- `snap3d.mobile.reference`: renders a bundle from its files alone, with the phone's math.
- `snap3d.mobile.coreml`: Core ML conversion and inspection of the bundled networks.
- ``bake_splat``, ``bake_lpgs``, ``bake_lightslab``: what each representation ships.

Needs the ``mobile`` extra (coremltools, scikit-learn) for lpgs and lightslab bundles.
"""

from snap3d.mobile.bundle import export_bundle, validate

__all__ = ["export_bundle", "validate"]
