"""torchvision's own ResNet code, without torchvision's package (whose C ops need the CUDA
build of torch that its wheel was built for): resnet.py read from a torchvision wheel, its
package-level imports (weights enums, API logging, presets) replaced by inert stand-ins.
The model classes are torchvision's, unchanged."""
import enum
import glob
import os
import sys
import types
import zipfile

WHEEL_DIRS = [os.environ.get("BT_TORCHVISION_WHEELS", ""),
              os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           ".venv", "wheels")]


def find_wheel():
    for d in WHEEL_DIRS:
        found = sorted(glob.glob(os.path.join(d, "torchvision-*.whl"))) if d else []
        if found:
            return found[-1]
    return None


def load_resnet_module(wheel: str) -> types.ModuleType:
    """torchvision.models.resnet from a wheel, with stand-ins for what it imports from the
    rest of torchvision (none of which builds a model)."""
    source = zipfile.ZipFile(wheel).read("torchvision/models/resnet.py").decode()

    class Weights:   # a pretrained-weights record: only its fields
        def __init__(self, **fields):
            self.__dict__.update(fields)

    class WeightsEnum(enum.Enum):   # no weights are ever loaded: weights=None passes
        @classmethod
        def verify(cls, obj):
            if obj is not None:
                raise ValueError("pretrained torchvision weights are not available here")
            return obj

    stubs = {
        "torchvision": {}, "torchvision.models": {}, "torchvision.transforms": {},
        "torchvision.transforms._presets": {"ImageClassification": object},
        "torchvision.utils": {"_log_api_usage_once": lambda obj: None},
        "torchvision.models._api": {"register_model": lambda *a, **k: (lambda f: f),
                                    "Weights": Weights, "WeightsEnum": WeightsEnum},
        "torchvision.models._meta": {"_IMAGENET_CATEGORIES": []},
        "torchvision.models._utils": {
            "_ovewrite_named_param": lambda kwargs, name, value: kwargs.setdefault(name, value),
            "handle_legacy_interface": lambda **k: (lambda f: f)},
    }
    saved = {name: sys.modules.get(name) for name in stubs}
    try:
        for name, attrs in stubs.items():
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            module.__path__ = []
            sys.modules[name] = module
        resnet = types.ModuleType("torchvision.models.resnet")
        resnet.__package__ = "torchvision.models"
        exec(compile(source, f"{wheel}!torchvision/models/resnet.py", "exec"),   # noqa: S102
             resnet.__dict__)
        return resnet
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
