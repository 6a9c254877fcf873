"""Network blocks shared by the framework and several methods.

- ``convnext_unet``: the hybrid ConvNeXt / transformer U-Net, the one shared segmentation backbone (Fuse4Seg's
  follower, the follower of every disjoint pipeline) and the 2-channel reference;
- ``restormer``: Restormer blocks (MDTA, GDFN) and CDDFuse's Lite Transformer;
- ``inn``: CDDFuse's invertible detail branch (affine couplings).

Methods import from here; nothing here imports from ``methods/``.
"""
