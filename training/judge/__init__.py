"""An independent judge of dali-tiny images (issue 17), apart from `training.detector`.

One component per file:

- `colours`: CIELAB conversion, ΔE distance, the nearest named colour.
- `masks`: binary-image helpers (connected regions, erosion, dilation, convex hull, IoU).
- `segment`: the shape's mask, by distance to the background colour.
- `ideal`: the caption's ideal rendering that best matches a drawn shape, and its IoU.
- `classifier`: a second shape classifier from image moments (no fitting of ideal shapes).
- `verdict`: every figure for one image against its caption.
- `report`: a model run over held-out captions, figures against the issue's targets.
- `gallery`: generated images beside their ideal renders, as one PNG.
"""
