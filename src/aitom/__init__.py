"""aitom: cryo-electron tomography on PyTorch Lightning.

Conventions (fixed once, used everywhere):

* Volumes are tensors of shape ``(..., Z, Y, X)``; 3-vectors (coordinates, shifts, rotation axes) are in
  ``(x, y, z)`` order, so a rotation matrix acts on column vectors ``(x, y, z)``.
* The centre of a box of ``N`` voxels is voxel ``N // 2`` on each axis (the FFT / RELION convention).
* Euler angles are ZYZ ``(rot, tilt, psi)``, numerically identical to RELION's ``rlnAngleRot``,
  ``rlnAngleTilt``, ``rlnAnglePsi``; radians in code, degrees in files and on the command line.
* Missing wedge: tilt axis Y, beam along Z, tilt range ``(min, max)`` in degrees, default ±60°.
* Voxel sizes are in Å and travel with the data.
"""

__version__ = "0.1.0"
