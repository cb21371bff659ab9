"""FLAME face parameters: frame layout, head models, meshes."""
