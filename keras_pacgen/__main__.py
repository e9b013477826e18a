import sys

from keras_pacgen.cli import main

sys.exit(main())
