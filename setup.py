"""wbsr_plugin: WBSR (weight-balancing super-resolution) as a BasicSR plugin.

Install torch (and a matching torchvision) first, then basicsr without build isolation, then this
package; see README.md.
"""
from setuptools import find_packages, setup

setup(
    name='wbsr_plugin',
    version='0.1.0',
    description='WBSR weight-balancing supernets, HES sampling, BDLoss and dynamic inference for BasicSR',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    # wbsr_runtime (runtime/): the torch-free core the plugin builds on; runtime/setup.py installs it alone
    packages=find_packages(include=['wbsr_plugin', 'wbsr_plugin.*']) + ['wbsr_runtime'],
    package_dir={'wbsr_runtime': 'runtime/wbsr_runtime'},
    install_requires=[
        'basicsr==1.4.2',
        'torch>=2.1',
        'numpy',
        'opencv-python',
        'lmdb',
        'pyyaml',
        'scikit-image',
        'tqdm',
        'safetensors>=0.4',  # weights files: written by export, read wherever weights are (--model, pretrain_network_g)
    ],
    extras_require={
        'test': ['pytest', 'ruff==0.17.6', 'spandrel'],  # ruff: the README's lint; spandrel: its RCAN loads our files
        'plot': ['matplotlib'],
        'export': ['onnx', 'onnxruntime', 'onnxconverter-common'],  # onnxconverter-common: --fp16-weights
        'runtimes': ['onnx', 'openvino', 'onnxruntime'],  # --runtime openvino|onnxruntime (inference/runtimes.py)
        'mutation': ['mutmut==3.8.1'],  # benchmarks/mutation_test.py
    },
    entry_points={
        'console_scripts': [
            'wbsr-train = wbsr_plugin.train:main',
            'wbsr-test = wbsr_plugin.test:main',
            'wbsr-subnets = wbsr_plugin.subnets:main',
            'wbsr-prepare = wbsr_plugin.prepare:main',
            'wbsr-infer = wbsr_plugin.infer:main',
            'wbsr-curve = wbsr_plugin.curve:main',
            'wbsr-fit-prior = wbsr_plugin.fit_prior:main',
            'wbsr-export = wbsr_plugin.export:main',
            'wbsr-calibrate = wbsr_plugin.calibrate:main',
            'wbsr-run = wbsr_runtime.cli:main',
        ],
    },
)
