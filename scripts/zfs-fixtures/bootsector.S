/*
 * The boot sector of the zvol fixtures (see README.md): a 512-byte MBR program
 * that SeaBIOS loads at 0x7c00. It reads the disk's second sector (LBA 1)
 * through the BIOS, prints it as a NUL-terminated string on COM1 (0x3f8, the
 * VM's serial console) and halts. The fixtures' snapshots differ in that
 * sector, so a booted guest's console says which snapshot its disk holds.
 *
 * Assembled by ./generate with GNU as (.code16) and ld --oformat binary.
 */
        .code16
        .text
        .globl _start
_start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x7c00, %sp
        sti
        movw    $0x0201, %ax            /* int 13h AH=02 read, AL=1 sector */
        movw    $0x0002, %cx            /* cylinder 0, sector 2 (= LBA 1) */
        xorb    %dh, %dh                /* head 0; DL = the boot drive */
        movw    $0x7e00, %bx            /* ES:BX = 0:7e00 */
        int     $0x13
        movw    $0x7e00, %si
        jnc     print
        movw    $failed, %si
print:
        lodsb
        testb   %al, %al
        jz      halt
        movb    %al, %ah
        movw    $0x3fd, %dx             /* line status: wait for an empty THR */
wait:
        inb     %dx, %al
        testb   $0x20, %al
        jz      wait
        movw    $0x3f8, %dx
        movb    %ah, %al
        outb    %al, %dx
        jmp     print
halt:
        hlt
        jmp     halt
failed:
        .asciz  "nereid-zvol: cannot read sector 1\r\n"
        .org    510
        .byte   0x55, 0xaa
