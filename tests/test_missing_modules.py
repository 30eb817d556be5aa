"""The package imports where Python has no distutils (3.12) and the machine has no requests: stand-ins take their
place for basicsr, and LooseVersion orders versions as distutils did."""
import subprocess
import sys

import pytest

from wbsr_plugin.utils.compat import LooseVersion

BLOCKED_IMPORT = '''
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('distutils', 'requests', '_distutils_hack', 'setuptools'):
            raise ModuleNotFoundError(f'No module named {name!r}')
sys.meta_path.insert(0, Missing())
import wbsr_plugin, basicsr.archs.arch_util, basicsr.utils.download_util as d
from basicsr.archs import build_network
print(type(build_network({'type': 'WBSRResNet', 'num_feat': 8, 'num_block': 1, 'widths': [8], 'depths': [1]})).__name__)
try:
    d.download_file_from_google_drive('x', 'y')
except ImportError as err:
    print(err)
'''


def test_the_package_imports_without_distutils_and_requests():
    proc = subprocess.run([sys.executable, '-c', BLOCKED_IMPORT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ['WBSRResNet', 'downloading needs the requests package: pip install requests']


@pytest.mark.parametrize('low, high', [('0.9.0', '0.10.0'), ('0.9', '0.9.0'), ('0.23.0', '0.23.0a0'),
                                       ('1.13.1+cu117', '2.0'), ('0.8.2', '0.9.0')])
def test_loose_version_orders_like_distutils(low, high):
    assert LooseVersion(low) < LooseVersion(high) and LooseVersion(high) >= LooseVersion(low)
    assert not LooseVersion(low) >= LooseVersion(high) and LooseVersion(high) > low


def test_loose_version_equality():
    assert LooseVersion('0.28.0') == LooseVersion('0.28.0') and LooseVersion('0.28.0') >= '0.9.0'
