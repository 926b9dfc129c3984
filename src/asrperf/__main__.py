from asrperf.cli import main

main()
