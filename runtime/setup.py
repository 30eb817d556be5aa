"""wbsr_runtime: dynamic WBSR super-resolution without torch (numpy, OpenCV, and ONNX Runtime or OpenVINO).

It runs the folders ``wbsr-export --dynamic`` writes; see README.md ("Deploying without torch").

    pip install "./runtime[onnxruntime,images]"   # the Python API and the wbsr-run folder command
    pip install "./runtime[onnxruntime]"          # the Python API only (arrays in, arrays out)
"""
from setuptools import setup

setup(
    name='wbsr_runtime',
    version='0.1.0',
    description='Dynamic WBSR super-resolution with numpy and ONNX Runtime or OpenVINO, without torch',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=['wbsr_runtime'],
    install_requires=['numpy'],
    # images: OpenCV reads and writes files for wbsr-run (the same decoder and encoder as the plugin's infer)
    extras_require={'onnxruntime': ['onnxruntime'], 'openvino': ['openvino'], 'images': ['opencv-python-headless']},
    entry_points={'console_scripts': ['wbsr-run = wbsr_runtime.cli:main']},
)
