from causalrec.cli import main

main()
