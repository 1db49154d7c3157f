import sys

from deepfuse.cli import main

sys.exit(main())
