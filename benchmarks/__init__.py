"""kdbench entry points: the Lightning CLI, the table runner, the result store, rendering and launchers."""
