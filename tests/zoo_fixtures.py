"""Write folders laid out like three public MONAI Model Zoo bundles, with random weights, for tests.

The real bundles (``lung_nodule_ct_detection``, ``breast_density_classification``,
``ventricular_short_axis_3label``) cannot be downloaded on the project's machines, so the tests run
:mod:`cds.models.zoo` on folders that have the same ``configs/metadata.json`` and ``configs/inference.json``
(same keys, structure, ``network_def``, pre- and post-processing as the zoo's published configs, read
from Project-MONAI/model-zoo: lung 0.6.x, breast 0.1.7, ventricular 0.3.4; the lung config is the 0.5/0.6
file with the 0.6.0 change "remove meta_dict usage" applied, as monai >= 1.3 rejects ``meta_key_postfix``) and a ``models/model.pt``
state dict of that ``network_def`` with seeded random weights. The zoo inference configs load
``models/model.pt`` with a ``CheckpointLoader``; none of them loads ``models/model.ts``, so no TorchScript
file is written. The bundles' ``scripts/`` folders (data-list helpers, evaluator, saver) are not
reproduced: cds never instantiates the config keys that use them.

Nothing here is committed as a file: :func:`write_zoo_bundle` writes into a temporary folder at test time.

>>> sorted(CONFIGS)
['breast_density_classification', 'lung_nodule_ct_detection', 'ventricular_short_axis_3label']
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["CONFIGS", "METADATA", "INFERENCE", "write_zoo_bundle", "state_dict_for", "torchvision_available"]

_SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"

# --------------------------------------------------------------------------------------------- lung

LUNG_METADATA: dict[str, Any] = {
    "schema": _SCHEMA,
    "version": "0.6.8",
    "changelog": {
        "0.6.8": "update issue for IgniteInfo",
        "0.6.7": "use monai 1.4 and update large files",
        "0.6.0": "remove meta_dict usage",
        "0.1.0": "complete the model package",
    },
    "monai_version": "1.4.0",
    "pytorch_version": "2.4.0",
    "numpy_version": "1.24.4",
    "optional_packages_version": {"nibabel": "5.2.1", "pytorch-ignite": "0.4.11", "torchvision": "0.19.0"},
    "name": "Lung nodule CT detection",
    "task": "CT lung nodule detection",
    "description": "A pre-trained model for volumetric (3D) detection of the lung lesion from CT image on LUNA16 dataset",
    "authors": "MONAI team",
    "copyright": "Copyright (c) MONAI Consortium",
    "data_source": "https://luna16.grand-challenge.org/Home/",
    "data_type": "nibabel",
    "image_classes": "1 channel data, CT at 0.703125 x 0.703125 x 1.25 mm",
    "label_classes": "dict data, containing Nx6 box and Nx1 classification labels.",
    "pred_classes": "dict data, containing Nx6 box, Nx1 classification labels, Nx1 classification scores.",
    "eval_metrics": {
        "mAP_IoU_0.10_0.50_0.05_MaxDet_100": 0.852,
        "AP_IoU_0.10_MaxDet_100": 0.858,
        "mAR_IoU_0.10_0.50_0.05_MaxDet_100": 0.998,
        "AR_IoU_0.10_MaxDet_100": 1.0,
    },
    "intended_use": "This is an example, not to be used for diagnostic purposes",
    "references": ["Lin, Tsung-Yi, et al. 'Focal loss for dense object detection. ICCV 2017"],
    "network_data_format": {
        "inputs": {
            "image": {
                "type": "image", "format": "magnitude", "modality": "CT", "num_channels": 1,
                "spatial_shape": ["16*n", "16*n", "8*n"], "dtype": "float16", "value_range": [0, 1],
                "is_patch_data": True, "channel_def": {"0": "image"},
            }
        },
        "outputs": {
            "pred": {
                "type": "object", "format": "dict", "dtype": "float16", "num_channels": 1,
                "spatial_shape": ["n", "n", "n"], "value_range": [-10000, 10000],
            }
        },
    },
}

LUNG_INFERENCE: dict[str, Any] = {
    "whether_raw_luna16": False,
    "whether_resampled_luna16": "$(not @whether_raw_luna16)",
    "imports": ["$import glob", "$import numpy", "$import os"],
    "bundle_root": ".",
    "image_key": "image",
    "ckpt_dir": "$@bundle_root + '/models'",
    "output_dir": "$@bundle_root + '/eval'",
    "output_filename": "result_luna16_fold0.json",
    "data_list_file_path": "$@bundle_root + '/LUNA16_datasplit/dataset_fold0.json'",
    "dataset_dir": "/datasets/LUNA16_Images_resample",
    "test_datalist": "$monai.data.load_decathlon_datalist(@data_list_file_path, is_segmentation=True, "
                     "data_list_key='validation', base_dir=@dataset_dir)",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "amp": True,
    "load_pretrain": True,
    "spatial_dims": 3,
    "num_classes": 1,
    "force_sliding_window": False,
    "size_divisible": [16, 16, 8],
    "infer_patch_size": [512, 512, 192],
    "anchor_generator": {
        "_target_": "monai.apps.detection.utils.anchor_utils.AnchorGeneratorWithAnchorShape",
        "feature_map_scales": [1, 2, 4],
        "base_anchor_shapes": [[6, 8, 4], [8, 6, 5], [10, 10, 6]],
    },
    "backbone": "$monai.networks.nets.resnet.resnet50(spatial_dims=3,n_input_channels=1,"
                "conv1_t_stride=[2,2,1],conv1_t_size=[7,7,7])",
    "feature_extractor": "$monai.apps.detection.networks.retinanet_network.resnet_fpn_feature_extractor("
                         "@backbone,3,False,[1,2],None)",
    "network_def": {
        "_target_": "RetinaNet",
        "spatial_dims": "@spatial_dims",
        "num_classes": "@num_classes",
        "num_anchors": 3,
        "feature_extractor": "@feature_extractor",
        "size_divisible": "@size_divisible",
        "use_list_output": False,
    },
    "network": "$@network_def.to(@device)",
    "detector": {
        "_target_": "RetinaNetDetector",
        "network": "@network",
        "anchor_generator": "@anchor_generator",
        "debug": False,
        "spatial_dims": "@spatial_dims",
        "num_classes": "@num_classes",
        "size_divisible": "@size_divisible",
    },
    "detector_ops": [
        "$@detector.set_target_keys(box_key='box', label_key='label')",
        "$@detector.set_box_selector_parameters(score_thresh=0.02,topk_candidates_per_level=1000,"
        "nms_thresh=0.22,detections_per_img=300)",
        "$@detector.set_sliding_window_inferer(roi_size=@infer_patch_size,overlap=0.25,sw_batch_size=1,"
        "mode='constant',device='cpu')",
    ],
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "@image_key", "_disabled_": "@whether_raw_luna16"},
            {"_target_": "LoadImaged", "keys": "@image_key", "reader": "itkreader", "affine_lps_to_ras": True,
             "_disabled_": "@whether_resampled_luna16"},
            {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
            {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [0.703125, 0.703125, 1.25],
             "_disabled_": "@whether_resampled_luna16"},
            {"_target_": "ScaleIntensityRanged", "keys": "@image_key", "a_min": -1024.0, "a_max": 300.0,
             "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": "@image_key"},
        ],
    },
    "dataset": {"_target_": "Dataset", "data": "$@test_datalist", "transform": "@preprocessing"},
    "dataloader": {
        "_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 4,
        "collate_fn": "$monai.data.utils.no_collation",
    },
    "inferer": {
        "_target_": "scripts.detection_inferer.RetinaNetInferer",
        "detector": "@detector",
        "force_sliding_window": "@force_sliding_window",
    },
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "ClipBoxToImaged", "box_keys": "box", "label_keys": "label",
             "box_ref_image_keys": "@image_key", "remove_empty": True},
            {"_target_": "AffineBoxToWorldCoordinated", "box_keys": "box", "box_ref_image_keys": "@image_key",
             "affine_lps_to_ras": True},
            {"_target_": "ConvertBoxModed", "box_keys": "box", "src_mode": "xyzxyz", "dst_mode": "cccwhd"},
            {"_target_": "DeleteItemsd", "keys": ["@image_key"]},
        ],
    },
    "handlers": [
        {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
         "load_dict": {"model": "@network"}, "_disabled_": "$not @load_pretrain"},
        {"_target_": "StatsHandler", "iteration_log": False},
        {"_target_": "scripts.detection_saver.DetectionSaver", "output_dir": "@output_dir",
         "filename": "@output_filename",
         "batch_transform": "$lambda x: [xx['image'].meta for xx in x]",
         "output_transform": "$lambda x: [@postprocessing({**xx['pred'],'image':xx['image']}) for xx in x]",
         "pred_box_key": "box", "pred_label_key": "label", "pred_score_key": "label_scores"},
    ],
    "evaluator": {
        "_target_": "scripts.evaluator.DetectionEvaluator",
        "_requires_": "@detector_ops",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
        "val_handlers": "@handlers",
        "amp": "@amp",
    },
    "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)"],
    "run": ["$@evaluator.run()"],
}

# --------------------------------------------------------------------------------------------- breast

BREAST_METADATA: dict[str, Any] = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
    "version": "0.1.7",
    "changelog": {
        "0.1.7": "update to huggingface hosting",
        "0.1.6": "Remove meta dict usage",
        "0.1.3": "Change input_dim from 229 to 299",
        "0.1.0": "complete the model package",
    },
    "monai_version": "1.3.0",
    "pytorch_version": "1.13.1",
    "numpy_version": "1.22.2",
    "required_packages_version": {"torchvision": "0.14.1"},
    "supported_apps": {},
    "name": "Breast density classification",
    "task": "Breast Density Classification",
    "description": "A pre-trained model for classifying breast images (mammograms)  ",
    "authors": "Center for Augmented Intelligence in Imaging, Mayo Clinic Florida",
    "copyright": "Copyright (c) Mayo Clinic",
    "data_source": "Mayo Clinic ",
    "data_type": "Jpeg",
    "image_classes": "three channel data, intensity scaled to [0, 1]. A single grayscale is copied to 3 channels",
    "label_classes": "four classes marked as [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0] and [0, 0, 0, 1] for the "
                     "classes A, B, C and D respectively.",
    "pred_classes": "One hot data",
    "eval_metrics": {"accuracy": 0.96},
    "intended_use": "This is an example, not to be used for diagnostic purposes",
    "references": ["Gupta, Vikash, et al. A multi-reconstruction study of breast density estimation using Deep "
                   "Learning. arXiv preprint arXiv:2202.08238 (2022)."],
    "network_data_format": {
        "inputs": {
            "image": {
                "type": "image", "format": "magnitude", "modality": "Mammogram", "num_channels": 3,
                "spatial_shape": [299, 299], "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                "channel_def": {"0": "image"},
            }
        },
        "outputs": {
            "pred": {
                "type": "image", "format": "labels", "dtype": "float32", "value_range": [0, 1],
                "num_channels": 4, "spatial_shape": [1, 4], "is_patch_data": False,
                "channel_def": {"0": "A", "1": "B", "2": "C", "3": "D"},
            }
        },
    },
}

BREAST_INFERENCE: dict[str, Any] = {
    "import": ["$import glob", "$import os", "$import torchvision"],
    "bundle_root": ".",
    "model_dir": "$@bundle_root + '/models'",
    "output_dir": "$@bundle_root + '/output'",
    "data": {"_target_": "scripts.createList.CreateImageLabelList", "filename": "./configs/sample_image_data.json"},
    "test_imagelist": "$@data.create_dataset('Test')[0]",
    "test_labellist": "$@data.create_dataset('Test')[1]",
    "dataset": {
        "_target_": "CacheDataset",
        "data": "$[{'image': i, 'label': l} for i, l in zip(@test_imagelist, @test_labellist)]",
        "transform": "@preprocessing", "cache_rate": 1, "num_workers": 4,
    },
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 4, "shuffle": False,
                   "num_workers": 4},
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network_def": {
        "_target_": "TorchVisionFCModel", "model_name": "inception_v3", "num_classes": 4, "pool": None,
        "use_conv": False, "bias": True, "pretrained": True,
    },
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": 2},
            {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0},
            {"_target_": "Resized", "keys": "image", "spatial_size": [299, 299]},
        ],
    },
    "inferer": {"_target_": "SimpleInferer"},
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True}],
    },
    "handlers": [
        {"_target_": "CheckpointLoader", "load_path": "$@model_dir + '/model.pt'", "load_dict": {"model": "@network"}},
        {"_target_": "StatsHandler", "iteration_log": False, "output_transform": "$lambda x: None"},
        {"_target_": "ClassificationSaver", "output_dir": "@output_dir",
         "batch_transform": "$lambda x: [xx['image'].meta for xx in x]",
         "output_transform": "$monai.handlers.from_engine(['pred'])"},
    ],
    "evaluator": {
        "_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
        "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
        "val_handlers": "@handlers", "amp": True,
    },
    "evaluating": ["$setattr(torch.backends.cudnn, 'benchmark', True)", "$@evaluator.run()"],
}

# --------------------------------------------------------------------------------------------- ventricles

SAX_METADATA: dict[str, Any] = {
    "schema": _SCHEMA,
    "version": "0.3.4",
    "changelog": {
        "0.3.4": "update to huggingface hosting",
        "0.3.3": "update AddChanneld with EnsureChannelFirstd",
        "0.1.0": "Initial version",
    },
    "monai_version": "1.3.0",
    "pytorch_version": "1.13.0",
    "numpy_version": "1.21.2",
    "optional_packages_version": {"nibabel": "3.2.1", "pytorch-ignite": "0.4.8"},
    "name": "Ventricular short axis 3 label segmentation",
    "task": "Segments the left and right ventricle in 2D short axis MR images",
    "description": "This network segments full cycle short axis images of the ventricles, labelling LV pool "
                   "separate from myocardium and RV pool",
    "authors": "Eric Kerfoot",
    "copyright": "Copyright (c) Eric Kerfoot, KCL",
    "license": "See license.txt",
    "network_data_format": {
        "inputs": {
            "image": {
                "type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1,
                "spatial_shape": [256, 256], "dtype": "float32", "value_range": [], "is_patch_data": False,
                "channel_def": {"0": "image"},
            }
        },
        "outputs": {
            "pred": {
                "type": "image", "format": "segmentation", "num_channels": 4, "spatial_shape": [256, 256],
                "dtype": "float32", "value_range": [0, 3], "is_patch_data": False,
                "channel_def": {"0": "background", "1": "lv_pool", "2": "myocardium", "3": "rv_pool"},
            }
        },
    },
}

SAX_INFERENCE: dict[str, Any] = {
    "imports": ["$import glob"],
    "bundle_root": ".",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "ckpt_path": "$@bundle_root + '/models/model.pt'",
    "dataset_dir": "/workspace/data",
    "output_dir": "./output",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii*')))",
    "network_def": {
        "_target_": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 4,
        "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2,
    },
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "image_only": False},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "ScaleIntensityd", "keys": "image"},
            {"_target_": "EnsureTyped", "keys": "image", "device": "@device"},
        ],
    },
    "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                   "num_workers": 0},
    "inferer": {"_target_": "SliceInferer", "roi_size": [256, 256], "spatial_dim": 2},
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "meta_key_postfix": "meta_dict", "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "meta_keys": "pred_meta_dict", "output_dir": "@output_dir"},
        ],
    },
    "handlers": [{"_target_": "CheckpointLoader", "load_path": "@ckpt_path", "load_dict": {"model": "@network"}}],
    "evaluator": {
        "_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
        "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
        "val_handlers": "@handlers",
    },
    "evaluating": ["$@evaluator.run()"],
}

METADATA = {
    "lung_nodule_ct_detection": LUNG_METADATA,
    "breast_density_classification": BREAST_METADATA,
    "ventricular_short_axis_3label": SAX_METADATA,
}
INFERENCE = {
    "lung_nodule_ct_detection": LUNG_INFERENCE,
    "breast_density_classification": BREAST_INFERENCE,
    "ventricular_short_axis_3label": SAX_INFERENCE,
}
CONFIGS = {name: (METADATA[name], INFERENCE[name]) for name in METADATA}

# Random RetinaNet heads start at the focal-loss prior (score ~0.01, under the bundle's 0.02 threshold), so
# the fixture re-draws the classification head around the threshold: some boxes pass, some do not.
_LUNG_HEAD_BIAS = math.log(0.02 / 0.98)
_LUNG_HEAD_STD = 0.05


def torchvision_available() -> bool:
    """True when ``import torchvision`` works (the breast density bundle's network needs it)."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a CUDA-only wheel next to a CPU torch raises RuntimeError
        return False
    return True


def state_dict_for(name: str, seed: int = 0) -> dict[str, Any]:
    """Seeded random weights for the ``network_def`` of zoo bundle ``name`` (built from the config itself)."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser(copy.deepcopy(INFERENCE[name]))
    parser["device"] = "$torch.device('cpu')"
    if name == "lung_nodule_ct_detection":
        from cds.models.zoo import _torchvision_free_detection

        _torchvision_free_detection()  # build the RetinaNet the way cds.models.zoo does where torchvision is missing
    if name == "breast_density_classification":
        parser["network_def#pretrained"] = False  # ImageNet weights would be downloaded
    torch.manual_seed(seed)
    net = parser.get_parsed_content("network_def")
    if name == "lung_nodule_ct_detection":
        head = net.classification_head.cls_logits
        with torch.no_grad():
            head.weight.normal_(0.0, _LUNG_HEAD_STD)
            head.bias.fill_(_LUNG_HEAD_BIAS)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def write_zoo_bundle(
    name: str, root: str | Path, seed: int = 0, weights: bool = True, folder: str | None = None
) -> Path:
    """Write ``<root>/<folder or name>/`` with configs/metadata.json, configs/inference.json, models/model.pt.

    ``weights=False`` leaves ``models/`` empty (an incomplete download).
    """
    import torch

    if name not in CONFIGS:
        raise ValueError(f"unknown zoo bundle {name!r}; one of {sorted(CONFIGS)}")
    path = Path(root) / (folder or name)
    (path / "configs").mkdir(parents=True, exist_ok=True)
    (path / "models").mkdir(exist_ok=True)
    metadata, inference = CONFIGS[name]
    (path / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=4))
    (path / "configs" / "inference.json").write_text(json.dumps(inference, indent=4))
    if weights:
        torch.save(state_dict_for(name, seed), path / "models" / "model.pt")
    return path
