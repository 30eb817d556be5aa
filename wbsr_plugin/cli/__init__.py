"""What the command modules share: device sharding, image files and maps, output names, evaluation runners,
YAML options, the model card and export files. Only commands (and the reproduction) import it."""
