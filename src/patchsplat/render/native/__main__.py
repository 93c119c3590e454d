from patchsplat.render.native import main

main()
