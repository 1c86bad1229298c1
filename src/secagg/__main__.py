from secagg.cli import main

main()
