"""Low-rank and tensor decompositions (importing registers them):
lowrank.svd (Linear), lowrank.tucker / lowrank.cp / lowrank.spatial_svd (Conv2d), lowrank.tt (Linear)."""
from .conv import CPConfig, SpatialSVDConfig, TuckerConfig
from .modules import Factorized, TTLinear
from .structure import rebuild, structure_of
from .svd import SVDConfig
from .tt import TTConfig

SVD, Tucker, CP, SpatialSVD, TT = SVDConfig, TuckerConfig, CPConfig, SpatialSVDConfig, TTConfig

__all__ = [
           "CP",
           "SVD",
           "TT",
           "CPConfig",
           "Factorized",
           "SVDConfig",
           "SpatialSVD",
           "SpatialSVDConfig",
           "TTConfig",
           "TTLinear",
           "Tucker",
           "TuckerConfig",
           "rebuild",
           "structure_of",
]
