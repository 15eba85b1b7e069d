"""The DNMP model (paper Sec. 3): primitives, latent shape decoder, radiance field, renderer."""

from .icosphere import ico_sphere
from .primitives import Primitives, ShapeDecoder, voxelize
from .field import BackgroundField, FarField, RadianceField
from .renderer import DNMPRenderer, RenderConfig, camera_rays, pixel_rays
from .autoencoder import MeshAutoEncoder, ShapeWeightsError, load_shape_decoder, template_latent

__all__ = [
    "ico_sphere",
    "Primitives",
    "ShapeDecoder",
    "voxelize",
    "RadianceField",
    "BackgroundField",
    "FarField",
    "DNMPRenderer",
    "RenderConfig",
    "camera_rays",
    "pixel_rays",
    "MeshAutoEncoder",
    "ShapeWeightsError",
    "load_shape_decoder",
    "template_latent",
]
