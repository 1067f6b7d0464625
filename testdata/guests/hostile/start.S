/*
 * start.S: entry of the C guests. capsule enters in 64-bit long mode with
 * RSP = 0x80000, RDI = the capsule boot info (0x2000), RSI = the zero page
 * and interrupts off (README, "Unikernel start state"). kit_start (kit.c)
 * reads the boot info, calls main and exits with its result.
 */
	.intel_syntax noprefix
	.code64
	.section .text.start, "ax"
	.globl	_start
_start:
	cli
	mov	rsp, 0x80000
	xor	ebp, ebp
	call	kit_start
1:	hlt
	jmp	1b
