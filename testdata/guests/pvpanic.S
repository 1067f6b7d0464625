/*
 * pvpanic: a guest that reports a panic through the ISA pvpanic device
 * (QEMU's pvpanic, I/O port 0x505).
 *
 * An ELF64 kernel, entered in 64-bit long mode; it reads nothing the
 * loader gives it. It
 *   1. prints "pvpanic: guest panicked\n" on COM1 (port 0x3f8),
 *   2. writes 1 (bit 0, PVPANIC_PANICKED: "guest panicked") to port 0x505
 *      as one byte,
 *   3. halts with interrupts off, forever: a VMM without the device sees
 *      a guest that never stops.
 *
 * Build (hello.ld puts everything in one PT_LOAD at 1 MiB):
 *   gcc -nostdlib -static -no-pie -Wl,-T,testdata/guests/hello.ld \
 *       -Wl,--build-id=none -o testdata/guests/pvpanic.elf testdata/guests/pvpanic.S
 *
 * Only block comments here: gcc puts the file through cpp (as it does
 * every .S file), which also brings in #include "lib64.inc".
 */
	.intel_syntax noprefix
	.code64

	.set	PVPANIC_PORT, 0x505
	.set	PVPANIC_PANICKED, 1

	.section .rodata, "a"
msg_panic:
	.ascii	"pvpanic: guest panicked\n"
	.set	msg_panic_len, . - msg_panic

	.section .text.start, "ax", @progbits
	.globl	_start
	.type	_start, @function
_start:
	cld
	lea	rsi, [rip + msg_panic]
	mov	ecx, msg_panic_len
	mov	edx, 0x3f8
.Lputs:
	lodsb
	out	dx, al
	loop	.Lputs

	mov	al, PVPANIC_PANICKED
	mov	edx, PVPANIC_PORT
	out	dx, al
.Lhalt:
	cli
	hlt
	jmp	.Lhalt
	.size	_start, . - _start

	.section .note.GNU-stack, "", @progbits
