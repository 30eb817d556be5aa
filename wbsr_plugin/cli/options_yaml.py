"""Network options for inference from a BasicSR YAML (the ``--opt`` of ``infer`` and ``curve``)."""
import yaml


def network_options_from_yaml(path):
    """The ``network_g`` section of a BasicSR training or test YAML.

    Raises:
        SystemExit: With a one-line message, when the file has no ``network_g`` section (the
            commands print it without a traceback).
    """
    with open(path, encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    if not isinstance(opt, dict) or 'network_g' not in opt:
        raise SystemExit(f'error: {path} has no network_g section.')
    return dict(opt['network_g'])
