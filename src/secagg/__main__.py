from secagg.launch import main

main()
